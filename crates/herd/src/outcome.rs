/// How a call through a breaker or throttle ended, as a classifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It worked, or failed through the caller's own fault (a 404, a validation error): the
    /// dependency is healthy.
    Success,
    /// The dependency failed (a 5xx, a timeout, a reset connection).
    Failure,
    /// The dependency refused the call for overload (429, 503, "do not retry"). A breaker
    /// counts it as a failure; a throttle counts it as not accepted.
    Overloaded,
    /// Says nothing about the dependency (the caller gave up first): counted nowhere.
    Ignored,
}
