//! The array controller: one per rack.

pub mod packing;
