from animalcls.cli import main

main()
