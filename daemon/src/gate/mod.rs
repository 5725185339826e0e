//! The gates of the rollout (see the README), as pure rules: the synthetic gate's verdicts, the shadow evidence gate, and
//! the flip rules that the daemon enforces when the mode changes.

pub mod flip;
pub mod shadow;
pub mod synthetic;
