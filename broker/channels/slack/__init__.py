"""Slack: approval prompts with Approve/Deny buttons, decisions from clicks, messages kept truthful.

* `notifier`: posts a Block Kit prompt when an approval opens and rewrites it on every change;
* `interactions`: the one handler for clicks and the deny-reason modal, fed by
  `endpoint` (``POST /slack/interactions``, signed requests) or `socket_mode`;
* `people`: Slack users and user groups as broker approvers;
* `blocks`, `signing`, `client`: the message layout, request verification, the Web API calls;
* `errors`: the exception tree.
"""

from broker.channels.delivery.retry import RetrySchedule
from broker.channels.slack.channel import SlackChannel

__all__ = ["RetrySchedule", "SlackChannel"]
