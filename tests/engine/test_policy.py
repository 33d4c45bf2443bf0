import pytest

from sluice.engine import ChildSpec, Restart, RestartPolicy, Supervisor
from sluice.engine.testing import StubActor


def test_delay_grows_exponentially_and_is_capped() -> None:
    policy = RestartPolicy(backoff_initial=0.1, backoff_max=1.0, backoff_factor=2.0, jitter=0)
    delays = [policy.delay(n) for n in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.delay(0) == pytest.approx(0.1)
    assert policy.delay(10_000) == pytest.approx(1.0)  # no float overflow


def test_delay_jitter_is_a_fraction_either_way() -> None:
    policy = RestartPolicy(backoff_initial=1.0, jitter=0.1)
    assert policy.delay(1, rand=lambda: 0.0) == pytest.approx(0.9)
    assert policy.delay(1, rand=lambda: 0.5) == pytest.approx(1.0)
    assert policy.delay(1, rand=lambda: 1.0) == pytest.approx(1.1)
    assert all(0.9 <= policy.delay(1) <= 1.1 for _ in range(100))


def test_defaults() -> None:
    policy = RestartPolicy()
    assert (policy.max_restarts, policy.window) == (5, 30.0)
    spec = ChildSpec("a", StubActor)
    assert spec.restart is Restart.PERMANENT
    assert spec.policy == policy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_restarts": -1},
        {"window": 0},
        {"backoff_initial": -1},
        {"backoff_initial": 5, "backoff_max": 1},
        {"backoff_factor": 0.5},
        {"jitter": 1.5},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_child_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([ChildSpec("a", StubActor), ChildSpec("a", StubActor)])
