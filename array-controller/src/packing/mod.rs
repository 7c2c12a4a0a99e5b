//! Packing instances onto boards (being written).
