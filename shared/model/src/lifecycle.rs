//! The lifecycle of a command or RPC to a device: its statuses and the moves between
//! them ([`CommandStatus::can_become`]), which every store enforces.

use serde::{Deserialize, Serialize};

/// Command lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Accepted, not yet sent (device offline, or waiting its turn).
    Queued,
    /// Published to the device's connection.
    Sent,
    /// The device acknowledged it (PUBACK).
    Delivered,
    /// The device answered (two-way RPC).
    Replied,
    /// Could not be delivered (lightweight RPC to an offline device, …).
    Failed,
    /// No reply within the timeout.
    TimedOut,
    /// Expired before it could be sent.
    Expired,
}

impl CommandStatus {
    /// Every status.
    pub const ALL: [CommandStatus; 7] = [
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Replied,
        CommandStatus::Failed,
        CommandStatus::TimedOut,
        CommandStatus::Expired,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Replied => "replied",
            CommandStatus::Failed => "failed",
            CommandStatus::TimedOut => "timed_out",
            CommandStatus::Expired => "expired",
        }
    }

    /// The status named `s` ([`CommandStatus::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        CommandStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// No further change is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandStatus::Replied
                | CommandStatus::Failed
                | CommandStatus::TimedOut
                | CommandStatus::Expired
        )
    }

    /// Whether a command may move from `self` to `to`. A sent command may go back to
    /// queued (its connection dropped before the device acknowledged; persistent commands
    /// are sent again on reconnect), and stay sent once more: the front reported it written
    /// at QoS 0 ([`WRITTEN_AT_MOST_ONCE`]), where no acknowledgement will ever come.
    pub fn can_become(self, to: CommandStatus) -> bool {
        use CommandStatus as S;
        matches!(
            (self, to),
            (S::Queued, S::Sent | S::Failed | S::TimedOut | S::Expired)
                | (
                    S::Sent,
                    S::Sent
                        | S::Queued
                        | S::Delivered
                        | S::Replied
                        | S::Failed
                        | S::TimedOut
                        | S::Expired
                )
                | (S::Delivered, S::Replied | S::Failed | S::TimedOut)
        )
    }
}

/// The detail of the status change that ends a command's delivery at QoS 0: the device
/// subscribed at QoS 0, the front wrote the command to its connection, and no
/// acknowledgement will come. The command stays `sent` (at most: it cannot be
/// `delivered`), and its delivery deadline no longer applies.
pub const WRITTEN_AT_MOST_ONCE: &str =
    "written to the device's connection at QoS 0; the device acknowledges nothing";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lifecycle() {
        use CommandStatus as S;
        assert!(S::Queued.can_become(S::Sent));
        assert!(S::Sent.can_become(S::Delivered));
        assert!(S::Sent.can_become(S::Queued));
        assert!(S::Delivered.can_become(S::Replied));
        assert!(!S::Replied.can_become(S::Failed));
        assert!(!S::Queued.can_become(S::Delivered));
        assert!(!S::Expired.can_become(S::Sent));
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            if s.is_final() {
                assert!(S::ALL.iter().all(|&t| !s.can_become(t)), "{s:?} is final");
            }
        }
    }
}
