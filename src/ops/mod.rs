//! The operator library: what every front end calls (the command line now,
//! Lua runbooks next). It returns typed results, with a stable code where an
//! outcome reaches a script, and plain-data events; it knows nothing of
//! flags, terminals or progress bars.

pub mod migrate;
