//! What the daemon keeps about its agents between runs of their specialists: which are paused
//! ([`pauses`]) and what they spent today and this month ([`spending`]). Plain state in memory; the
//! dispatcher sets it (its `pauses` and `budget` modules) and `orchctl agents`, `status` and the
//! console read it.

pub mod pauses;
pub mod spending;
