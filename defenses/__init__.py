"""Defenses and adaptations: visual prompts, adversarial fine-tuning."""
