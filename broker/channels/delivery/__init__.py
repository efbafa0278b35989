"""What keeping one message per approval truthful needs whatever the channel: the retry schedule,
the claim that lets one replica post, and the reconciler's passes over the store.
broker.channels.slack.notifier is the channel built on them."""
