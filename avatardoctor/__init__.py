"""avatardoctor: will this machine run this Live Avatar configuration, and if not, why and what will."""

__version__ = "0.1.0"
