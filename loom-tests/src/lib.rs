//! Nothing here: the models live in `tests/`.
