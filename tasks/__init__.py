"""Built-in tasks: the embedded ``digits`` task, CIFAR and ImageFolder."""
