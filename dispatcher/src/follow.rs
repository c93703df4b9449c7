//! Following a script's log (see [`contracts::submission::follow::LogFollower`]).

pub use contracts::submission::follow::LogFollower;
