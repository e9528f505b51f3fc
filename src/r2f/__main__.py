from r2f.cli import main

main()
