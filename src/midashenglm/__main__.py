"""``python -m midashenglm``, which is what ``torchrun -m midashenglm train ...`` runs."""

from midashenglm.cli import main

main()
