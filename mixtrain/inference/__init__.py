"""Use a trained model: load it, predict new images (`mixtrain predict`), export it
(`mixtrain export`)."""
