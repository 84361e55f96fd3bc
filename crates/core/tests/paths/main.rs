//! One test per row of DESIGN.md's table "Every path of the seed", named after the row.

mod harness;
mod lifecycle;
mod messages;
