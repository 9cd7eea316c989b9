"""What the agent needs from the operating system: atomic file writes, systemd notifications, memory trims."""
