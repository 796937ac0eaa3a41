#!/usr/bin/env bash
# Alive hook for the stand-in backend: exit 0 iff /health answers 200.
exec curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$LLMUX_PORT/health"
