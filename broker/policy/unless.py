"""A rule's ``unless``: the rule applies only when its conditions do *not* all hold.

``unless`` takes the same mapping of argument path to test as ``when``. A rule with both
applies when every ``when`` condition holds and at least one ``unless`` condition does not.
Because a test on a missing argument is false, ``deny ... unless: {"args.amount": {lte: 500}}``
refuses a call that leaves ``amount`` out, as a rule that lists what an allowed call must
satisfy should (PolicyLayer's ``evaluate`` rules compile into this).

For ranking a rule with ``unless`` counts as conditional, like one with ``when``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from broker.policy.conditions import Check, Condition, all_hold


def rule_check(when: Sequence[Condition], unless: Sequence[Condition]) -> Check | None:
    """The rule's argument check, or None when it has neither ``when`` nor ``unless``."""
    if not unless:
        return all_hold(when) if when else None
    exempt = all_hold(unless)
    if not when:
        return lambda arguments: not exempt(arguments)
    applies = all_hold(when)

    def check(arguments: Mapping[str, Any]) -> bool:
        return applies(arguments) and not exempt(arguments)

    return check
