//! The admin view of the queue (`mta-sts-agent queue list`): what is
//! queued, per recipient its status, last error and next try.

use serde::{Deserialize, Serialize};

use super::rcpt_domain;
use crate::relay::spool::{RcptStatus, Spooled};

/// A queued message as `mta-sts-agent queue list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub id: String,
    pub sender: String,
    pub arrival: u64,
    pub size: u64,
    pub recipients: Vec<RcptView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptView {
    pub address: String,
    /// pending, delivered or failed.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds of the next attempt, for pending recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
}

impl QueueView {
    pub fn of(msg: &Spooled) -> QueueView {
        let e = &msg.envelope;
        QueueView {
            id: e.id.clone(),
            sender: e.sender.clone(),
            arrival: e.arrival,
            size: msg.size,
            recipients: e
                .recipients
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let st = msg.state.rcpts.get(i);
                    let status = st.map(|s| s.status).unwrap_or(RcptStatus::Pending);
                    RcptView {
                        address: r.clone(),
                        status: match status {
                            RcptStatus::Pending => "pending",
                            RcptStatus::Delivered => "delivered",
                            RcptStatus::Failed => "failed",
                        }
                        .to_string(),
                        reason: st.and_then(|s| s.reason.clone().or(s.reply.clone())),
                        next_attempt: (status == RcptStatus::Pending).then(|| {
                            msg.state
                                .domains
                                .get(&rcpt_domain(r))
                                .map(|d| d.next_attempt)
                                .unwrap_or(0)
                        }),
                    }
                })
                .collect(),
        }
    }
}
