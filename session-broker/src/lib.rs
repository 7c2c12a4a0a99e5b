//! The session broker (being built): the game platform's session API and the two-stage fusion
//! scheduler. So far only the scheduler's pure decision logic exists.

pub mod scheduler;
