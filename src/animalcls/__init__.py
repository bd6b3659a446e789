"""animalcls: reproduce and extend the 'Image Classification on Animals' study."""

__version__ = "0.1.0"
