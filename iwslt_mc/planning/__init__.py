"""Planning: size predictions before a build (:mod:`.planner`: the base, the spec, the prediction), the
``--target`` search (:mod:`.search`), the stages and shipped recipe that build a spec (:mod:`.recipe_spec`),
and the quality-size frontier (:mod:`.frontier`)."""
