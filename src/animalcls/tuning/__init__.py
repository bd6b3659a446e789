"""The machinery of `animalcls tune`, one layer below its verb (animalcls.commands.tune): the search
space, the study's storage and samplers, the objective whose trials are ordinary runs, the summary."""
