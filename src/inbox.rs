//! What the rest of llmux tells the switch task: queued requests coming and
//! going, refused connections, operators' commands, reloads.
//!
//! A lock-free queue (`crossbeam`'s `SegQueue`) and a `Notify`: pushed by
//! requests on the cold path (a miss), by the control API and by reloads;
//! drained only by the switch task, which turns each [`Input`] into a
//! [`crate::machine::Event`]. A request for the active model never touches
//! it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crossbeam::queue::SegQueue;
use tokio::sync::{oneshot, Notify};

use crate::machine::{ModelId, Ticket};

/// The answer to an operator's sleep: the models put to sleep.
pub type SleepAnswer = oneshot::Sender<Result<Vec<ModelId>, String>>;

/// One message for the switch task.
pub enum Input {
    /// A request queued for `model`.
    Queued {
        /// Its model.
        model: ModelId,
        /// Its number.
        ticket: Ticket,
        /// When it arrived.
        at: Instant,
    },
    /// A queued request left the queue.
    Left {
        /// Its model.
        model: ModelId,
        /// Its number.
        ticket: Ticket,
    },
    /// A request found `model`'s backend refusing connections.
    Refused(ModelId),
    /// An operator asks to sleep `model` (`None`: every resident, the
    /// pinned ones only with `all`).
    Sleep {
        /// The model, or every resident.
        model: Option<ModelId>,
        /// With no model: pinned residents too.
        all: bool,
        /// Where the answer goes.
        answer: SleepAnswer,
    },
    /// The configuration was reloaded.
    Reload,
}

impl Input {
    /// The model it names, if any.
    pub fn model(&self) -> Option<ModelId> {
        match self {
            Input::Queued { model, .. } | Input::Left { model, .. } | Input::Refused(model) => Some(*model),
            Input::Sleep { model, .. } => *model,
            Input::Reload => None,
        }
    }
}

/// The switch task's inbox.
#[derive(Default)]
pub struct Inbox {
    queue: SegQueue<Input>,
    /// Raised after every push; awaited only by the switch task.
    pub notify: Notify,
    next_ticket: AtomicU64,
}

impl Inbox {
    /// Sends `input` and wakes the switch task.
    pub fn push(&self, input: Input) {
        self.queue.push(input);
        self.notify.notify_one();
    }

    /// The next input, if any (switch task only).
    pub fn pop(&self) -> Option<Input> {
        self.queue.pop()
    }

    /// A new ticket number.
    pub fn ticket(&self) -> Ticket {
        self.next_ticket.fetch_add(1, Relaxed)
    }
}
