"""The moving reference: the update rule (``rules``: when, with what α), the ways to apply it (``dense``, ``zero3``,
``adapter``: one ``Applier`` contract), the one function that picks an applier (``select``), and the loop's step
that joins the two (``update``)."""
