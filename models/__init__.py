"""Example models and the data they train on (data that ships with installed packages).

Importing this package registers the architectures that checkpoints name.
"""

from models.digits import digits_splits
from models.zoo import LSTMLM, CharLM, LeNet5, LeNet300, LSTMClassifier

__all__ = ["LSTMLM", "CharLM", "LSTMClassifier", "LeNet5", "LeNet300", "digits_splits"]
