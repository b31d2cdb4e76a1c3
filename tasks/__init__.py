"""Built-in tasks: ``digits``, CIFAR and ImageFolder; text-to-image ``digits-t2i`` (with its embedded model), ``sd-nudity``, ``sd-object`` and their judges.

Every module of this package is imported by the plug-in loader, so a new task
module registers itself by being here.
"""
