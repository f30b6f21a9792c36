//! The order of a connection's bus sends: tickets taken in packet order.

use super::*;

/// Puts a connection's bus sends in arrival order.
///
/// A ticket is taken synchronously when the publish service is called (ntex calls it in
/// packet order); [`Sequencer::turn`] waits until every earlier ticket was sent.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    next: Cell<u64>,
    serving: Cell<u64>,
    changed: Notify,
}

impl Sequencer {
    pub(crate) fn ticket(&self) -> u64 {
        let t = self.next.get();
        self.next.set(t + 1);
        t
    }

    /// Waits for `ticket`'s turn; the returned guard passes the turn on when dropped.
    pub(crate) async fn turn(&self, ticket: u64) -> Turn<'_> {
        loop {
            let changed = self.changed.notified();
            if self.serving.get() == ticket {
                return Turn(self);
            }
            changed.await;
        }
    }
}

/// The turn to send, held while sending.
#[derive(Debug)]
pub(crate) struct Turn<'a>(&'a Sequencer);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.serving.set(self.0.serving.get() + 1);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn sequencer_sends_in_ticket_order() {
        let seq = std::rc::Rc::new(Sequencer::default());
        let order = std::rc::Rc::new(RefCell::new(Vec::new()));
        let tickets: Vec<u64> = (0..3).map(|_| seq.ticket()).collect();
        let local = tokio::task::LocalSet::new();
        // Start them in reverse: each still waits for the earlier tickets.
        for &t in tickets.iter().rev() {
            let (seq, order) = (seq.clone(), order.clone());
            local.spawn_local(async move {
                let _turn = seq.turn(t).await;
                order.borrow_mut().push(t);
            });
        }
        local.await;
        assert_eq!(*order.borrow(), vec![0, 1, 2]);
    }
}
