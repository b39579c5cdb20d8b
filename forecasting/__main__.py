from forecasting.cli import main

main()
