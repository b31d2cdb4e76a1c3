"""Built-in attacks: PGD, AutoAttack, transfer."""
