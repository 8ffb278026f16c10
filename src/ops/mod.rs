//! The operator library: what every front end calls (the command line, Lua
//! runbooks). It returns typed results, with a stable [`code::Code`] where an
//! outcome reaches a script, and plain-data events; it knows nothing of
//! flags, terminals, Lua or progress bars.

pub mod audit;
pub mod cluster;
pub mod code;
pub mod console;
pub mod cordon;
pub mod create;
pub mod evacuate;
pub mod history;
pub mod migrate;
pub mod placement;
pub mod precheck;
pub mod probe;
pub mod rollback;
pub mod run;
pub mod runs;
