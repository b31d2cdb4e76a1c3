"""Machine unlearning for classifiers (SalUn and baselines) and its metrics."""
