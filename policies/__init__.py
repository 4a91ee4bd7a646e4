"""Authorization: the pure decision for "may this agent open this route?" and the policies behind it."""
