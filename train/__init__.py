"""HOHOHO training recipes, run from the repository root as modules.

    python -m train.train_cnn ...            # stage 1: the slice CNN
    python -m train.extract_embeddings ...   # embeddings of every slice
    python -m train.train_lstm ...           # stage 2: the sequence model, writes the weights
    python -m train.pretrain_simclr ...      # optional self-supervised initialisation
    python -m train.ablate ...               # the poster's comparisons
    python -m train.oof_predict ...          # out-of-fold probabilities for the label audit
    python -m train.make_demo_weights ...    # the shipped demo model, end to end

Each script is a short recipe over ``hohoho_core`` with ``get_args_parser()`` and ``main``;
``train.common`` holds what they share. See train/README.md.
"""
