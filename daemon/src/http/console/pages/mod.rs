//! One module per page of the console.

pub mod agents;
pub mod approvals;
pub mod login;
pub mod pipeline;
pub mod rollout;
pub mod task;
