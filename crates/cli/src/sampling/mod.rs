//! Flow-matching sampling: schedules, solvers, guidance.
