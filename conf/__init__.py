"""The shipped configs, as the package ``trustregion.conf`` (pyproject maps this dir to it): Hydra reads them with
``pkg://trustregion.conf`` from any directory, in a checkout or an installed wheel."""
