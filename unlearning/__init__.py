"""Machine unlearning: classifiers (SalUn and baselines, their metrics and section) and text-to-image models (ESD, SalUn).

Every module of this package is imported by the plug-in loader, so a new
unlearner module registers itself by being here.
"""
