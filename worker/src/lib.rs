//! The manager side of the manager<->worker protocol: spawns the Python worker and talks to it.
