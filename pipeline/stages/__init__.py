"""The experiment's stages, each written once over an executor (``pipeline.executors``):

* ``teacher``: teacher autoencoder-classifier, transfer substitute, standard classifier, Madry AT baseline;
* ``pool``: the adversarial training pool and the fixed test sets of the ``paper`` and ``transfer`` protocols;
* ``mid``: MID meta-training of the student encoder (and its ablations, pool refresh, online attacks);
* ``evaluate``: the three protocols, the tables and the figure;
* ``analyze``: the paper's analysis figures (Figs. 7-14) with their numbers;
* ``experiment``: all of them in order, for one config and its variants (``mid run``).
"""
