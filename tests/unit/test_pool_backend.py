"""A backend's breaker as a state machine: each transition, on a clock the test sets (no sleeps)."""

from __future__ import annotations

from minato.upstream.pool.backend import Breaker, State, backend_name

COOLDOWN = 30.0


def _breaker(*, threshold: int = 3, trips: bool = True) -> Breaker:
    return Breaker(threshold, COOLDOWN, trips=trips)


def test_a_backend_not_probed_yet_is_unknown_and_may_be_asked() -> None:
    breaker = _breaker()
    assert breaker.state(0.0) is State.UNKNOWN
    assert breaker.available(0.0)


def test_a_probe_that_answers_makes_it_up_and_one_that_does_not_makes_it_down() -> None:
    breaker = _breaker()
    assert breaker.probe_answered(1.0) is False  # it was not down: nothing to announce
    assert breaker.state(1.0) is State.UP
    assert breaker.probe_failed("refused") is True
    assert (breaker.state(2.0), breaker.available(2.0), breaker.reason) == (State.DOWN, False, "refused")
    assert breaker.probe_failed("refused again") is False  # already down: said once
    assert breaker.probe_answered(3.0) is True
    assert (breaker.state(3.0), breaker.reason) == (State.UP, "")


def test_failures_below_the_threshold_keep_it_up() -> None:
    breaker = _breaker()
    breaker.probe_answered(0.0)
    assert [breaker.failed(1.0, "refused") for _ in range(2)] == [False, False]
    assert (breaker.state(1.0), breaker.failures) == (State.UP, 2)


def test_the_thresholds_failure_makes_it_cool_for_the_cool_down() -> None:
    breaker = _breaker()
    breaker.probe_answered(0.0)
    breaker.failed(10.0, "refused")
    breaker.failed(10.0, "refused")
    assert breaker.failed(10.0, "busy") is True
    assert (breaker.state(10.0), breaker.available(10.0), breaker.reason) == (State.COOLING, False, "busy")
    assert breaker.state(10.0 + COOLDOWN - 0.001) is State.COOLING


def test_the_cool_down_ending_hands_it_back_to_what_the_last_probe_said() -> None:
    breaker = _breaker(threshold=1)
    breaker.probe_answered(0.0)
    breaker.failed(10.0, "refused")
    assert (breaker.state(10.0 + COOLDOWN), breaker.available(10.0 + COOLDOWN)) == (State.UP, True)
    breaker.failed(100.0, "refused")
    breaker.probe_failed("refused")
    assert (breaker.state(100.0 + COOLDOWN), breaker.available(100.0 + COOLDOWN)) == (State.DOWN, False)


def test_a_probe_answering_while_it_cools_keeps_the_count_and_one_after_starts_it_again() -> None:
    breaker = _breaker(threshold=2)
    breaker.failed(10.0, "refused")
    breaker.failed(10.0, "refused")
    breaker.probe_answered(20.0)  # still cooling: the probe is not yet the trial
    assert (breaker.state(20.0), breaker.failures) == (State.COOLING, 2)
    breaker.probe_answered(10.0 + COOLDOWN)
    assert (breaker.state(10.0 + COOLDOWN), breaker.failures) == (State.UP, 0)


def test_an_answered_request_starts_the_count_again() -> None:
    breaker = _breaker(threshold=2)
    breaker.failed(1.0, "refused")
    breaker.answered()
    assert breaker.failed(2.0, "refused") is False
    assert breaker.state(2.0) is State.UNKNOWN


def test_a_breaker_that_may_not_trip_counts_but_never_cools() -> None:
    breaker = _breaker(threshold=1, trips=False)
    assert breaker.failed(1.0, "refused") is False
    assert (breaker.failures, breaker.state(1.0), breaker.available(1.0)) == (1, State.UNKNOWN, True)


def test_a_backend_is_named_by_host_and_port() -> None:
    assert backend_name("http://gpu-a.test:11434") == "gpu-a.test:11434"
    assert backend_name("https://ollama.example") == "ollama.example:443"
    assert backend_name("http://[::1]:8080") == "[::1]:8080"
