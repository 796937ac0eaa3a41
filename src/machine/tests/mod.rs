//! The machine's tests: a script harness ([`script`]), one table test per
//! rule of README's "The switch protocol" ([`protocol`]), regression tests
//! for the defects the machine fixes ([`regressions`]) and seeded property
//! tests ([`props`]).

mod capacity;
mod props;
mod protocol;
mod regressions;
mod script;
