"""Planning: size predictions before a build (:mod:`.planner`: specs, predictions, ``--target`` search, build
plans) and the quality-size frontier (:mod:`.frontier`)."""
