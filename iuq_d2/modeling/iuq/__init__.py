from .iuq_condinst import IUQCondInst
from .query_bank import BankEntries, QueryBank

__all__ = ["BankEntries", "IUQCondInst", "QueryBank"]
