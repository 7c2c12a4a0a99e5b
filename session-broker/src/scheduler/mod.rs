//! The fusion scheduler (being written).
