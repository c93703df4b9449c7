//! Following a script's log (see [`contracts::submission::LogFollower`]).

pub use contracts::submission::LogFollower;
