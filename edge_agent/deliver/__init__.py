"""Verdict -> the outside world: the message payloads, the sink interface and its implementations (MQTT with
its durable spool, stdout, recording), the alert snapshot, and the client the CLI uses to command the agent."""
