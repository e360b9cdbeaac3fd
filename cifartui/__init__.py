"""cifartui: train CNNs on CIFAR-10 and CIFAR-100 from the terminal."""

__version__ = "0.1.0"
