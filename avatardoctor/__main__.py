from avatardoctor.cli import main

main()
