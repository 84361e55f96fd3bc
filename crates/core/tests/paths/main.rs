//! One test per row of docs/ARCHITECTURE.md's table "Every path of the seed", named after the row, and the
//! paths a bus backend adds (interest, subscriptions it decides, unreachable workers).

mod abuse;
mod harness;
mod identity;
mod interest;
mod lifecycle;
mod messages;
mod tokens;
