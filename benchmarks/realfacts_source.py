"""The hand-written source of the ``realfacts`` benchmark: well-known real-world facts and how each becomes a QA item.

Every fact below was written by hand from common public knowledge and checked twice; a fact that is contested,
ambiguous or recently changed is left out (``None`` in the country table): e.g. no capital for South Africa (three)
or Bolivia (two), no language for Canada, Belgium, Switzerland or India, no continent for countries that span two,
no currency for Croatia or Bulgaria (both changed to the euro recently). ``benchmarks/realfacts_build.py`` expands
the tables into ``src/r2f/data/resources/realfacts/facts.jsonl`` with :func:`expand` and measures which facts
SmolLM2-135M-Instruct knows.

Each item's answer is a full sentence ("The capital of France is Paris."), the form an instruct model answers in,
so that likelihoods compare like with like; its wrong candidates (``perturbed_answer``) are the same sentence with
another answer of the same relation. Distractors are chosen deterministically: the row's hand-picked hard ones first
(a famous non-capital city, the other Brontë sister), then answers of the same relation from the same region (for
country facts and landmarks) or sharing the element name's first letter (for chemical symbols), then the rest, each
group in sha256 order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

#: Wrong candidates per fact (chance of ranking the true answer first: 1 / (1 + N_PERTURBED) = 20 %).
N_PERTURBED = 4

# ----------------------------------------------------------------------------------------------------- countries
#: (subject as used mid-sentence, capital, currency unit, main language, continent, region, hard capital distractors).
#: ``None``: the fact is left out (contested, ambiguous or recently changed). ``region`` only steers distractors.
COUNTRIES: tuple[tuple[str, str | None, str | None, str | None, str | None, str, tuple[str, ...]], ...] = (
    # Europe
    ("France", "Paris", "euro", "French", "Europe", "Europe", ("Lyon", "Marseille")),
    ("Germany", "Berlin", "euro", "German", "Europe", "Europe", ("Munich", "Bonn")),
    ("Italy", "Rome", "euro", "Italian", "Europe", "Europe", ("Milan",)),
    ("Spain", "Madrid", "euro", "Spanish", "Europe", "Europe", ("Barcelona",)),
    ("Portugal", "Lisbon", "euro", "Portuguese", "Europe", "Europe", ("Porto",)),
    ("the United Kingdom", "London", "pound", "English", "Europe", "Europe", ("Manchester",)),
    ("Ireland", "Dublin", "euro", "English", "Europe", "Europe", ("Cork",)),
    ("the Netherlands", "Amsterdam", "euro", "Dutch", "Europe", "Europe", ("Rotterdam",)),
    ("Belgium", "Brussels", "euro", None, "Europe", "Europe", ("Antwerp",)),
    ("Austria", "Vienna", "euro", "German", "Europe", "Europe", ("Salzburg",)),
    ("Switzerland", "Bern", "franc", None, "Europe", "Europe", ("Zurich", "Geneva")),
    ("Greece", "Athens", "euro", "Greek", "Europe", "Europe", ("Thessaloniki",)),
    ("Sweden", "Stockholm", "krona", "Swedish", "Europe", "Europe", ("Gothenburg",)),
    ("Norway", "Oslo", "krone", "Norwegian", "Europe", "Europe", ("Bergen",)),
    ("Denmark", "Copenhagen", "krone", "Danish", "Europe", "Europe", ("Aarhus",)),
    ("Finland", "Helsinki", "euro", "Finnish", "Europe", "Europe", ()),
    ("Iceland", "Reykjavík", "króna", "Icelandic", "Europe", "Europe", ()),
    ("Poland", "Warsaw", "złoty", "Polish", "Europe", "Europe", ("Kraków",)),
    ("Ukraine", "Kyiv", "hryvnia", "Ukrainian", "Europe", "Europe", ()),
    ("the Czech Republic", "Prague", "koruna", "Czech", "Europe", "Europe", ("Brno",)),
    ("Hungary", "Budapest", "forint", "Hungarian", "Europe", "Europe", ()),
    ("Romania", "Bucharest", "leu", "Romanian", "Europe", "Europe", ()),
    ("Serbia", "Belgrade", "dinar", "Serbian", "Europe", "Europe", ()),
    ("Croatia", "Zagreb", None, "Croatian", "Europe", "Europe", ()),
    ("Bulgaria", "Sofia", None, "Bulgarian", "Europe", "Europe", ()),
    ("Estonia", "Tallinn", "euro", "Estonian", "Europe", "Europe", ()),
    ("Latvia", "Riga", "euro", "Latvian", "Europe", "Europe", ()),
    ("Lithuania", "Vilnius", "euro", "Lithuanian", "Europe", "Europe", ()),
    ("Russia", "Moscow", "ruble", "Russian", None, "Europe", ("Saint Petersburg",)),
    ("Turkey", "Ankara", "lira", "Turkish", None, "Asia", ("Istanbul",)),
    # Asia
    ("Japan", "Tokyo", "yen", "Japanese", "Asia", "Asia", ("Osaka", "Kyoto")),
    ("China", "Beijing", "yuan", "Chinese", "Asia", "Asia", ("Shanghai",)),
    ("India", "New Delhi", "rupee", None, "Asia", "Asia", ("Mumbai",)),
    ("South Korea", "Seoul", "won", "Korean", "Asia", "Asia", ("Busan",)),
    ("Thailand", "Bangkok", "baht", "Thai", "Asia", "Asia", ()),
    ("Vietnam", "Hanoi", "dong", "Vietnamese", "Asia", "Asia", ("Ho Chi Minh City",)),
    ("Indonesia", None, "rupiah", "Indonesian", None, "Asia", ()),
    ("the Philippines", "Manila", "peso", None, "Asia", "Asia", ()),
    ("Pakistan", "Islamabad", "rupee", None, "Asia", "Asia", ("Karachi", "Lahore")),
    ("Bangladesh", "Dhaka", "taka", "Bengali", "Asia", "Asia", ("Chittagong",)),
    ("Nepal", "Kathmandu", "rupee", "Nepali", "Asia", "Asia", ()),
    ("Iran", "Tehran", "rial", "Persian", "Asia", "Asia", ()),
    ("Iraq", "Baghdad", "dinar", "Arabic", "Asia", "Asia", ("Basra",)),
    ("Saudi Arabia", "Riyadh", "riyal", "Arabic", "Asia", "Asia", ("Jeddah", "Mecca")),
    ("the United Arab Emirates", "Abu Dhabi", "dirham", "Arabic", "Asia", "Asia", ("Dubai",)),
    ("Jordan", "Amman", "dinar", "Arabic", "Asia", "Asia", ()),
    ("Syria", "Damascus", "pound", "Arabic", "Asia", "Asia", ("Aleppo",)),
    ("Lebanon", "Beirut", "pound", "Arabic", "Asia", "Asia", ()),
    ("Afghanistan", "Kabul", "afghani", None, "Asia", "Asia", ()),
    ("Mongolia", "Ulaanbaatar", "tögrög", "Mongolian", "Asia", "Asia", ()),
    ("Malaysia", "Kuala Lumpur", "ringgit", "Malay", "Asia", "Asia", ()),
    ("Cambodia", "Phnom Penh", "riel", "Khmer", "Asia", "Asia", ()),
    ("Laos", "Vientiane", "kip", "Lao", "Asia", "Asia", ()),
    ("Qatar", "Doha", "riyal", None, "Asia", "Asia", ()),
    ("Kazakhstan", "Astana", "tenge", None, None, "Asia", ("Almaty",)),
    # the Americas
    ("the United States", "Washington, D.C.", "dollar", "English", "North America", "North America", ("New York City",)),
    ("Canada", "Ottawa", "dollar", None, "North America", "North America", ("Toronto", "Montreal")),
    ("Mexico", "Mexico City", "peso", "Spanish", "North America", "North America", ("Guadalajara",)),
    ("Cuba", "Havana", "peso", "Spanish", "North America", "North America", ()),
    ("Jamaica", "Kingston", "dollar", None, "North America", "North America", ()),
    ("Brazil", "Brasília", "real", "Portuguese", "South America", "South America", ("Rio de Janeiro", "São Paulo")),
    ("Argentina", "Buenos Aires", "peso", "Spanish", "South America", "South America", ("Córdoba",)),
    ("Chile", "Santiago", "peso", "Spanish", "South America", "South America", ("Valparaíso",)),
    ("Peru", "Lima", "sol", "Spanish", "South America", "South America", ("Cusco",)),
    ("Colombia", "Bogotá", "peso", "Spanish", "South America", "South America", ("Medellín",)),
    ("Venezuela", "Caracas", "bolívar", "Spanish", "South America", "South America", ()),
    ("Ecuador", "Quito", "dollar", "Spanish", "South America", "South America", ("Guayaquil",)),
    ("Uruguay", "Montevideo", "peso", "Spanish", "South America", "South America", ()),
    ("Paraguay", "Asunción", "guaraní", None, "South America", "South America", ()),
    # Oceania
    ("Australia", "Canberra", "dollar", "English", None, "Oceania", ("Sydney", "Melbourne")),
    ("New Zealand", "Wellington", "dollar", "English", None, "Oceania", ("Auckland",)),
    # Africa
    ("Egypt", "Cairo", "pound", "Arabic", None, "Africa", ("Alexandria",)),
    ("Nigeria", "Abuja", "naira", None, "Africa", "Africa", ("Lagos",)),
    ("Kenya", "Nairobi", "shilling", None, "Africa", "Africa", ("Mombasa",)),
    ("Ethiopia", "Addis Ababa", "birr", None, "Africa", "Africa", ()),
    ("Morocco", "Rabat", "dirham", None, "Africa", "Africa", ("Casablanca", "Marrakesh")),
    ("Ghana", "Accra", "cedi", None, "Africa", "Africa", ()),
    ("South Africa", None, "rand", None, "Africa", "Africa", ()),
    ("Algeria", "Algiers", "dinar", "Arabic", "Africa", "Africa", ()),
    ("Tunisia", "Tunis", "dinar", "Arabic", "Africa", "Africa", ()),
    ("Libya", "Tripoli", "dinar", "Arabic", "Africa", "Africa", ()),
    ("Senegal", "Dakar", "franc", None, "Africa", "Africa", ()),
    ("Uganda", "Kampala", "shilling", None, "Africa", "Africa", ()),
    ("Tanzania", None, "shilling", None, "Africa", "Africa", ()),
    ("Zimbabwe", "Harare", None, None, "Africa", "Africa", ()),
)  # fmt: skip

# ------------------------------------------------------------------------------------------------ other subjects
#: (element as used mid-sentence, chemical symbol).
ELEMENTS: tuple[tuple[str, str], ...] = (
    ("hydrogen", "H"), ("helium", "He"), ("lithium", "Li"), ("beryllium", "Be"), ("boron", "B"), ("carbon", "C"),
    ("nitrogen", "N"), ("oxygen", "O"), ("fluorine", "F"), ("neon", "Ne"), ("sodium", "Na"), ("magnesium", "Mg"),
    ("aluminium", "Al"), ("silicon", "Si"), ("phosphorus", "P"), ("sulfur", "S"), ("chlorine", "Cl"), ("argon", "Ar"),
    ("potassium", "K"), ("calcium", "Ca"), ("titanium", "Ti"), ("chromium", "Cr"), ("manganese", "Mn"), ("iron", "Fe"),
    ("cobalt", "Co"), ("nickel", "Ni"), ("copper", "Cu"), ("zinc", "Zn"), ("arsenic", "As"), ("selenium", "Se"),
    ("bromine", "Br"), ("krypton", "Kr"), ("silver", "Ag"), ("tin", "Sn"), ("antimony", "Sb"), ("iodine", "I"),
    ("xenon", "Xe"), ("barium", "Ba"), ("tungsten", "W"), ("platinum", "Pt"), ("gold", "Au"), ("mercury", "Hg"),
    ("lead", "Pb"), ("radon", "Rn"), ("uranium", "U"), ("plutonium", "Pu"),
)  # fmt: skip

#: (title, author, hard distractors).
BOOKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Pride and Prejudice", "Jane Austen", ()),
    ("Sense and Sensibility", "Jane Austen", ()),
    ("1984", "George Orwell", ("Aldous Huxley",)),
    ("Animal Farm", "George Orwell", ()),
    ("Hamlet", "William Shakespeare", ("Christopher Marlowe",)),
    ("Romeo and Juliet", "William Shakespeare", ()),
    ("Macbeth", "William Shakespeare", ()),
    ("Othello", "William Shakespeare", ()),
    ("King Lear", "William Shakespeare", ()),
    ("Don Quixote", "Miguel de Cervantes", ()),
    ("War and Peace", "Leo Tolstoy", ("Fyodor Dostoevsky",)),
    ("Anna Karenina", "Leo Tolstoy", ()),
    ("Crime and Punishment", "Fyodor Dostoevsky", ("Leo Tolstoy",)),
    ("The Brothers Karamazov", "Fyodor Dostoevsky", ()),
    ("Moby-Dick", "Herman Melville", ()),
    ("The Great Gatsby", "F. Scott Fitzgerald", ("Ernest Hemingway",)),
    ("To Kill a Mockingbird", "Harper Lee", ()),
    ("The Adventures of Tom Sawyer", "Mark Twain", ()),
    ("Adventures of Huckleberry Finn", "Mark Twain", ()),
    ("Oliver Twist", "Charles Dickens", ()),
    ("A Tale of Two Cities", "Charles Dickens", ()),
    ("Great Expectations", "Charles Dickens", ()),
    ("A Christmas Carol", "Charles Dickens", ()),
    ("Les Misérables", "Victor Hugo", ("Alexandre Dumas",)),
    ("The Hunchback of Notre-Dame", "Victor Hugo", ()),
    ("The Odyssey", "Homer", ("Virgil",)),
    ("The Iliad", "Homer", ("Virgil",)),
    ("Frankenstein", "Mary Shelley", ("Bram Stoker",)),
    ("Dracula", "Bram Stoker", ("Mary Shelley",)),
    ("The Hobbit", "J. R. R. Tolkien", ("C. S. Lewis",)),
    ("The Lord of the Rings", "J. R. R. Tolkien", ("C. S. Lewis",)),
    ("The Old Man and the Sea", "Ernest Hemingway", ()),
    ("The Sun Also Rises", "Ernest Hemingway", ()),
    ("For Whom the Bell Tolls", "Ernest Hemingway", ()),
    ("Jane Eyre", "Charlotte Brontë", ("Emily Brontë",)),
    ("Wuthering Heights", "Emily Brontë", ("Charlotte Brontë",)),
    ("The Catcher in the Rye", "J. D. Salinger", ()),
    ("One Hundred Years of Solitude", "Gabriel García Márquez", ()),
    ("The Divine Comedy", "Dante Alighieri", ()),
    ("Faust", "Johann Wolfgang von Goethe", ()),
    ("On the Origin of Species", "Charles Darwin", ()),
    ("Brave New World", "Aldous Huxley", ("George Orwell",)),
    ("The Count of Monte Cristo", "Alexandre Dumas", ("Victor Hugo",)),
    ("The Three Musketeers", "Alexandre Dumas", ()),
    ("Alice's Adventures in Wonderland", "Lewis Carroll", ()),
    ("The Picture of Dorian Gray", "Oscar Wilde", ()),
    ("Madame Bovary", "Gustave Flaubert", ()),
    ("Gulliver's Travels", "Jonathan Swift", ()),
    ("Robinson Crusoe", "Daniel Defoe", ()),
    ("Treasure Island", "Robert Louis Stevenson", ()),
    ("Strange Case of Dr Jekyll and Mr Hyde", "Robert Louis Stevenson", ()),
    ("The Time Machine", "H. G. Wells", ("Jules Verne",)),
    ("The War of the Worlds", "H. G. Wells", ("Jules Verne",)),
    ("Twenty Thousand Leagues Under the Seas", "Jules Verne", ("H. G. Wells",)),
    ("Around the World in Eighty Days", "Jules Verne", ()),
    ("Little Women", "Louisa May Alcott", ()),
    ("Of Mice and Men", "John Steinbeck", ()),
    ("The Grapes of Wrath", "John Steinbeck", ()),
    ("Lord of the Flies", "William Golding", ()),
    ("The Metamorphosis", "Franz Kafka", ()),
    ("A Brief History of Time", "Stephen Hawking", ()),
    ("The Prince", "Niccolò Machiavelli", ()),
    ("The Republic", "Plato", ("Aristotle",)),
    ("Fahrenheit 451", "Ray Bradbury", ()),
    ("The Little Prince", "Antoine de Saint-Exupéry", ()),
    ("Charlie and the Chocolate Factory", "Roald Dahl", ()),
    ("The Jungle Book", "Rudyard Kipling", ()),
    ("Peter Pan", "J. M. Barrie", ()),
    ("The Call of the Wild", "Jack London", ()),
    ("The Adventures of Sherlock Holmes", "Arthur Conan Doyle", ()),
    ("Harry Potter and the Philosopher's Stone", "J. K. Rowling", ()),
    ("The Lion, the Witch and the Wardrobe", "C. S. Lewis", ("J. R. R. Tolkien",)),
    ("Heart of Darkness", "Joseph Conrad", ()),
    ("The Scarlet Letter", "Nathaniel Hawthorne", ()),
    ("Uncle Tom's Cabin", "Harriet Beecher Stowe", ()),
    ("Paradise Lost", "John Milton", ()),
    ("The Canterbury Tales", "Geoffrey Chaucer", ()),
    ("The Wealth of Nations", "Adam Smith", ()),
    ("Das Kapital", "Karl Marx", ()),
    ("Leviathan", "Thomas Hobbes", ()),
    ("Candide", "Voltaire", ()),
    ("The Stranger", "Albert Camus", ()),
    ("In Search of Lost Time", "Marcel Proust", ()),
    ("Lolita", "Vladimir Nabokov", ()),
    ("The Hitchhiker's Guide to the Galaxy", "Douglas Adams", ()),
    ("A Game of Thrones", "George R. R. Martin", ()),
    ("The Da Vinci Code", "Dan Brown", ()),
    ("The Shining", "Stephen King", ()),
    ("Murder on the Orient Express", "Agatha Christie", ()),
    ("The Handmaid's Tale", "Margaret Atwood", ()),
    ("Dune", "Frank Herbert", ()),
    ("Slaughterhouse-Five", "Kurt Vonnegut", ()),
    ("Catch-22", "Joseph Heller", ()),
    ("Mrs Dalloway", "Virginia Woolf", ()),
    ("Walden", "Henry David Thoreau", ()),
    ("Leaves of Grass", "Walt Whitman", ()),
    ("The Raven", "Edgar Allan Poe", ()),
    ("Winnie-the-Pooh", "A. A. Milne", ()),
    ("Black Beauty", "Anna Sewell", ()),
    ("The Wind in the Willows", "Kenneth Grahame", ()),
    ("Anne of Green Gables", "Lucy Maud Montgomery", ()),
    ("The Secret Garden", "Frances Hodgson Burnett", ()),
    ("Things Fall Apart", "Chinua Achebe", ()),
    ("The Godfather", "Mario Puzo", ()),
    ("Gone with the Wind", "Margaret Mitchell", ()),
)  # fmt: skip

#: (painting as used mid-sentence, painter, hard distractors).
PAINTINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("the Mona Lisa", "Leonardo da Vinci", ("Raphael", "Michelangelo")),
    ("The Last Supper", "Leonardo da Vinci", ("Michelangelo",)),
    ("The Lady with an Ermine", "Leonardo da Vinci", ()),
    ("The Starry Night", "Vincent van Gogh", ("Claude Monet",)),
    ("The Potato Eaters", "Vincent van Gogh", ()),
    ("Café Terrace at Night", "Vincent van Gogh", ()),
    ("The Night Watch", "Rembrandt", ("Johannes Vermeer",)),
    ("Girl with a Pearl Earring", "Johannes Vermeer", ("Rembrandt",)),
    ("The Scream", "Edvard Munch", ()),
    ("Guernica", "Pablo Picasso", ("Salvador Dalí",)),
    ("Les Demoiselles d'Avignon", "Pablo Picasso", ()),
    ("The Weeping Woman", "Pablo Picasso", ()),
    ("The Old Guitarist", "Pablo Picasso", ()),
    ("The Persistence of Memory", "Salvador Dalí", ("René Magritte",)),
    ("The Birth of Venus", "Sandro Botticelli", ("Titian",)),
    ("Primavera", "Sandro Botticelli", ()),
    ("The Creation of Adam", "Michelangelo", ("Raphael",)),
    ("The School of Athens", "Raphael", ("Michelangelo",)),
    ("The Kiss", "Gustav Klimt", ()),
    ("Water Lilies", "Claude Monet", ("Édouard Manet",)),
    ("Impression, Sunrise", "Claude Monet", ("Édouard Manet",)),
    ("The Garden of Earthly Delights", "Hieronymus Bosch", ("Pieter Bruegel the Elder",)),
    ("American Gothic", "Grant Wood", ()),
    ("Las Meninas", "Diego Velázquez", ("Francisco Goya",)),
    ("The Third of May 1808", "Francisco Goya", ("Diego Velázquez",)),
    ("Saturn Devouring His Son", "Francisco Goya", ()),
    ("Liberty Leading the People", "Eugène Delacroix", ()),
    ("The Son of Man", "René Magritte", ()),
    ("Nighthawks", "Edward Hopper", ()),
    ("The Arnolfini Portrait", "Jan van Eyck", ()),
    ("A Sunday Afternoon on the Island of La Grande Jatte", "Georges Seurat", ()),
    ("The Hay Wain", "John Constable", ("J. M. W. Turner",)),
    ("The Fighting Temeraire", "J. M. W. Turner", ("John Constable",)),
    ("Olympia", "Édouard Manet", ("Claude Monet",)),
    ("Luncheon of the Boating Party", "Pierre-Auguste Renoir", ()),
    ("The Card Players", "Paul Cézanne", ()),
    ("The Raft of the Medusa", "Théodore Géricault", ()),
    ("Wanderer above the Sea of Fog", "Caspar David Friedrich", ()),
    ("The Swing", "Jean-Honoré Fragonard", ()),
    ("The Ambassadors", "Hans Holbein the Younger", ()),
    ("The Blue Boy", "Thomas Gainsborough", ()),
    ("The Gleaners", "Jean-François Millet", ()),
    ("Christina's World", "Andrew Wyeth", ()),
    ("The Two Fridas", "Frida Kahlo", ()),
    ("The Sleeping Gypsy", "Henri Rousseau", ()),
)  # fmt: skip

#: (landmark as used mid-sentence, country as used mid-sentence; every country is a subject of COUNTRIES).
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("the Eiffel Tower", "France"), ("the Louvre", "France"), ("Mont Saint-Michel", "France"),
    ("the Palace of Versailles", "France"), ("the Colosseum", "Italy"), ("the Leaning Tower of Pisa", "Italy"),
    ("the Trevi Fountain", "Italy"), ("Pompeii", "Italy"), ("Mount Vesuvius", "Italy"), ("Mount Etna", "Italy"),
    ("the Taj Mahal", "India"), ("the Golden Temple", "India"), ("the Statue of Liberty", "the United States"),
    ("the Golden Gate Bridge", "the United States"), ("Mount Rushmore", "the United States"),
    ("the Grand Canyon", "the United States"), ("the Empire State Building", "the United States"),
    ("the White House", "the United States"), ("Big Ben", "the United Kingdom"), ("Stonehenge", "the United Kingdom"),
    ("Buckingham Palace", "the United Kingdom"), ("Machu Picchu", "Peru"), ("Christ the Redeemer", "Brazil"),
    ("the Sydney Opera House", "Australia"), ("Uluru", "Australia"), ("the Parthenon", "Greece"),
    ("the Sagrada Família", "Spain"), ("the Alhambra", "Spain"), ("Petra", "Jordan"), ("Angkor Wat", "Cambodia"),
    ("the Brandenburg Gate", "Germany"), ("Neuschwanstein Castle", "Germany"), ("the Kremlin", "Russia"),
    ("Red Square", "Russia"), ("Lake Baikal", "Russia"), ("Mount Fuji", "Japan"), ("the Great Pyramid of Giza", "Egypt"),
    ("the Great Sphinx of Giza", "Egypt"), ("Chichen Itza", "Mexico"), ("the CN Tower", "Canada"),
    ("the Burj Khalifa", "the United Arab Emirates"), ("the Forbidden City", "China"), ("the Potala Palace", "China"),
    ("the Terracotta Army", "China"), ("Hagia Sophia", "Turkey"), ("Table Mountain", "South Africa"),
    ("Mount Kilimanjaro", "Tanzania"), ("the Petronas Towers", "Malaysia"), ("Easter Island", "Chile"),
    ("Borobudur", "Indonesia"), ("the Atomium", "Belgium"), ("the Charles Bridge", "the Czech Republic"),
    ("the Galápagos Islands", "Ecuador"), ("Ha Long Bay", "Vietnam"), ("Schönbrunn Palace", "Austria"),
    ("the Rijksmuseum", "the Netherlands"),
)  # fmt: skip

#: (musical work as used mid-sentence, composer, hard distractors).
WORKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("The Magic Flute", "Wolfgang Amadeus Mozart", ()),
    ("The Marriage of Figaro", "Wolfgang Amadeus Mozart", ("Gioachino Rossini",)),
    ("Eine kleine Nachtmusik", "Wolfgang Amadeus Mozart", ()),
    ("Don Giovanni", "Wolfgang Amadeus Mozart", ()),
    ("The Four Seasons", "Antonio Vivaldi", ()),
    ("Swan Lake", "Pyotr Ilyich Tchaikovsky", ()),
    ("The Nutcracker", "Pyotr Ilyich Tchaikovsky", ()),
    ("Für Elise", "Ludwig van Beethoven", ("Wolfgang Amadeus Mozart",)),
    ("the Moonlight Sonata", "Ludwig van Beethoven", ()),
    ("Messiah", "George Frideric Handel", ()),
    ("Water Music", "George Frideric Handel", ()),
    ("Carmen", "Georges Bizet", ()),
    ("La traviata", "Giuseppe Verdi", ("Giacomo Puccini",)),
    ("Aida", "Giuseppe Verdi", ()),
    ("The Barber of Seville", "Gioachino Rossini", ("Wolfgang Amadeus Mozart",)),
    ("Madama Butterfly", "Giacomo Puccini", ("Giuseppe Verdi",)),
    ("La bohème", "Giacomo Puccini", ()),
    ("The Rite of Spring", "Igor Stravinsky", ()),
    ("The Firebird", "Igor Stravinsky", ()),
    ("Boléro", "Maurice Ravel", ()),
    ("The Blue Danube", "Johann Strauss II", ("Richard Strauss",)),
    ("Also sprach Zarathustra", "Richard Strauss", ("Johann Strauss II",)),
    ("Clair de lune", "Claude Debussy", ()),
    ("The Planets", "Gustav Holst", ()),
    ("Rhapsody in Blue", "George Gershwin", ()),
    ("The Ring of the Nibelung", "Richard Wagner", ()),
    ("Ride of the Valkyries", "Richard Wagner", ()),
    ("Tristan und Isolde", "Richard Wagner", ()),
    ("the Brandenburg Concertos", "Johann Sebastian Bach", ()),
    ("the Goldberg Variations", "Johann Sebastian Bach", ()),
    ("The Well-Tempered Clavier", "Johann Sebastian Bach", ()),
    ("the Peer Gynt suites", "Edvard Grieg", ()),
    ("Flight of the Bumblebee", "Nikolai Rimsky-Korsakov", ()),
    ("Pictures at an Exhibition", "Modest Mussorgsky", ()),
    ("the Gymnopédies", "Erik Satie", ()),
    ("The Carnival of the Animals", "Camille Saint-Saëns", ()),
    ("the Hungarian Dances", "Johannes Brahms", ()),
    ("the Hungarian Rhapsodies", "Franz Liszt", ()),
    ("the New World Symphony", "Antonín Dvořák", ()),
    ("the Canon in D", "Johann Pachelbel", ()),
    ("The Sorcerer's Apprentice", "Paul Dukas", ()),
    ("West Side Story", "Leonard Bernstein", ()),
    ("The Phantom of the Opera", "Andrew Lloyd Webber", ()),
)  # fmt: skip

#: (animal, class). Only animals whose class is unambiguous (no spiders, jellyfish or starfish).
ANIMALS: tuple[tuple[str, str], ...] = (
    ("whale", "mammal"), ("dolphin", "mammal"), ("bat", "mammal"), ("elephant", "mammal"), ("horse", "mammal"),
    ("kangaroo", "mammal"), ("platypus", "mammal"), ("gorilla", "mammal"), ("seal", "mammal"),
    ("eagle", "bird"), ("penguin", "bird"), ("ostrich", "bird"), ("owl", "bird"), ("parrot", "bird"),
    ("swan", "bird"), ("flamingo", "bird"), ("crocodile", "reptile"), ("snake", "reptile"), ("tortoise", "reptile"),
    ("lizard", "reptile"), ("iguana", "reptile"), ("chameleon", "reptile"), ("cobra", "reptile"),
    ("frog", "amphibian"), ("toad", "amphibian"), ("salamander", "amphibian"), ("newt", "amphibian"),
    ("axolotl", "amphibian"), ("shark", "fish"), ("salmon", "fish"), ("tuna", "fish"), ("goldfish", "fish"),
    ("seahorse", "fish"), ("trout", "fish"), ("eel", "fish"), ("ant", "insect"), ("bee", "insect"),
    ("butterfly", "insect"), ("beetle", "insect"), ("grasshopper", "insect"), ("dragonfly", "insect"),
    ("mosquito", "insect"),
)  # fmt: skip

#: Answers that name the same thing (never a distractor of one another) and the extra spellings that count as a
#: match of a greedy generation.
SAME_ANSWER: tuple[frozenset[str], ...] = (
    frozenset({"krona", "krone", "króna"}), frozenset({"rial", "riyal"}),
)
ALIASES: dict[str, tuple[str, ...]] = {
    "Kyiv": ("Kiev",), "yuan": ("renminbi",), "Chinese": ("Mandarin",), "złoty": ("zloty",), "tögrög": ("tugrik",),
    "Washington, D.C.": ("Washington",), "Johann Strauss II": ("Johann Strauss",), "Rembrandt": ("Rembrandt van Rijn",),
    "mammal": ("mammals", "mammalia"), "bird": ("birds", "aves"), "reptile": ("reptiles", "reptilia"),
    "amphibian": ("amphibians", "amphibia"), "fish": ("fishes",), "insect": ("insects", "insecta"),
    "Europe": ("European",), "Asia": ("Asian",), "Africa": ("African",), "North America": ("North American",),
    "South America": ("South American",), "the United States": ("USA", "U.S."), "the United Kingdom": ("UK", "Britain", "England"),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ the relations
@dataclass(frozen=True)
class Relation:
    """How a (subject, object) pair of one relation is asked and answered."""

    name: str
    subject_type: str
    question: str
    paraphrases: tuple[str, str, str]
    answer: str  # the full-sentence answer; {S} is the subject with a capital first letter
    paraphrased_answer: str
    render: Callable[[str], str] = lambda o: o  # how an object appears in the sentence (articles)


def _article(cls: str) -> str:
    return ("an " if cls[0] in "aeiou" else "a ") + cls


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("capital", "country", "What is the capital of {s}?",
             ("Which city is the capital of {s}?", "What city serves as the capital of {s}?",
              "Name the capital city of {s}."),
             "The capital of {s} is {o}.", "{O} is the capital city of {s}."),
    Relation("currency", "country", "What is the currency of {s}?",
             ("Which currency is used in {s}?", "What money do people pay with in {s}?",
              "Name the official currency of {s}."),
             "The currency of {s} is the {o}.", "In {s}, people pay with the {o}."),
    Relation("language", "country", "What is the main language spoken in {s}?",
             ("Which language do most people in {s} speak?", "What language is mainly spoken in {s}?",
              "Name the principal language of {s}."),
             "The main language spoken in {s} is {o}.", "Most people in {s} speak {o}."),
    Relation("continent", "country", "On which continent is {s}?",
             ("{S} is located on which continent?", "Which continent is {s} part of?",
              "Name the continent where {s} lies."),
             "{S} is a country in {o}.", "{S} lies on the continent of {o}."),
    Relation("symbol", "element", "What is the chemical symbol for {s}?",
             ("Which chemical symbol stands for {s}?", "What is the symbol of the element {s}?",
              "Name the chemical symbol of {s}."),
             "The chemical symbol for {s} is {o}.", "{S} has the chemical symbol {o}."),
    Relation("author", "book", "Who wrote {s}?",
             ("Who is the author of {s}?", "{S} was written by which author?", "Name the writer of {s}."),
             "{S} was written by {o}.", "{O} is the author of {s}."),
    Relation("painter", "painting", "Who painted {s}?",
             ("Which artist painted {s}?", "Who is the painter of {s}?", "Name the artist who painted {s}."),
             "{S} was painted by {o}.", "{O} is the painter of {s}."),
    Relation("landmark_country", "landmark", "In which country is {s}?",
             ("{S} is located in which country?", "Which country is home to {s}?",
              "Name the country where {s} is found."),
             "{S} is in {o}.", "{S} can be found in {o}."),
    Relation("composer", "musical_work", "Who composed {s}?",
             ("Which composer wrote {s}?", "Who is the composer of {s}?", "Name the composer of {s}."),
             "{S} was composed by {o}.", "{O} is the composer of {s}."),
    Relation("animal_class", "animal", "What kind of animal is the {s}?",
             ("Which class of animals does the {s} belong to?", "What type of animal is the {s}?",
              "Name the class of animals that the {s} belongs to."),
             "The {s} is {o}.", "The {s} is classed as {o}.", _article),
)}  # fmt: skip


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, subject: str, obj: str = "") -> str:
    return template.format(s=subject, S=_cap(subject), o=obj, O=_cap(obj))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _same(a: str, b: str) -> bool:
    return a == b or any(a in g and b in g for g in SAME_ANSWER)


def pick_distractors(relation: str, subject: str, answer: str, pool: list[tuple[str, str]], hard: tuple[str, ...],
                     preferred: Callable[[str, str], bool]) -> list[str]:
    """N_PERTURBED wrong objects: hard ones, then ``preferred(candidate, candidate's group)``, then the rest.

    ``pool`` holds (object, group) pairs of the relation; within each tier the order is sha256 of the fact and the
    candidate, so the choice is deterministic and independent of the table's order.
    """
    out: list[str] = []
    for h in hard:
        if not _same(h, answer) and h not in out:
            out.append(h)
    seen = set(out)
    rest = sorted({o: g for o, g in pool}.items(), key=lambda og: (not preferred(*og), _digest(relation, subject, og[0])))
    for o, _ in rest:
        if len(out) >= N_PERTURBED:
            break
        if not _same(o, answer) and o not in seen and not any(_same(o, s) for s in seen):
            out.append(o)
            seen.add(o)
    if len(out) < N_PERTURBED:
        raise ValueError(f"{relation}/{subject}: only {len(out)} distractors")
    return out[:N_PERTURBED]


def _item(rel: Relation, subject: str, obj: str, wrong: list[str]) -> dict:
    r = rel.render
    target = obj[4:] if obj.startswith("the ") and rel.name == "landmark_country" else obj
    aliases = list(dict.fromkeys(ALIASES.get(obj, ()) + ALIASES.get(target, ())))
    return {
        "id": f"{rel.name}:{subject}",
        "subject": subject,
        "subject_type": rel.subject_type,
        "relation": rel.name,
        "question": _fill(rel.question, subject),
        "answer": _fill(rel.answer, subject, r(obj)),
        "paraphrased_question": [_fill(p, subject) for p in rel.paraphrases],
        "paraphrased_answer": _fill(rel.paraphrased_answer, subject, r(obj)),
        "perturbed_answer": [_fill(rel.answer, subject, r(w)) for w in wrong],
        "target": target,
        "aliases": aliases,
    }


def expand() -> list[dict]:
    """Every candidate fact as a QA record, in table order (countries first, relation by relation per country)."""
    region = {c[0]: c[5] for c in COUNTRIES}
    items: list[dict] = []
    country_cols = {"capital": 1, "currency": 2, "language": 3, "continent": 4}
    pools = {rel: [(c[col], c[5]) for c in COUNTRIES if c[col] is not None] for rel, col in country_cols.items()}
    for c in COUNTRIES:
        subject, reg, hard_capitals = c[0], c[5], c[6]
        for rel, col in country_cols.items():
            obj = c[col]
            if obj is None:
                continue
            hard = hard_capitals if rel == "capital" else ()
            wrong = pick_distractors(rel, subject, obj, pools[rel], hard, lambda o, g, reg=reg: g == reg)
            items.append(_item(RELATIONS[rel], subject, obj, wrong))
    sym_pool = [(s, e) for e, s in ELEMENTS]
    for element, symbol in ELEMENTS:
        first = element[0].upper()
        wrong = pick_distractors("symbol", element, symbol, sym_pool, (), lambda o, g, first=first: o[0] == first)
        items.append(_item(RELATIONS["symbol"], element, symbol, wrong))
    for rel, table in (("author", BOOKS), ("painter", PAINTINGS), ("composer", WORKS)):
        pool = [(row[1], "") for row in table]
        for subject, obj, hard in table:
            wrong = pick_distractors(rel, subject, obj, pool, hard, lambda o, g: False)
            items.append(_item(RELATIONS[rel], subject, obj, wrong))
    lm_pool = [(country, region[country]) for _, country in LANDMARKS]
    for landmark, country in LANDMARKS:
        reg = region[country]
        wrong = pick_distractors("landmark_country", landmark, country, lm_pool, (), lambda o, g, reg=reg: g == reg)
        items.append(_item(RELATIONS["landmark_country"], landmark, country, wrong))
    cls_pool = [(cls, "") for _, cls in ANIMALS]
    for animal, cls in ANIMALS:
        wrong = pick_distractors("animal_class", animal, cls, cls_pool, (), lambda o, g: False)
        items.append(_item(RELATIONS["animal_class"], animal, cls, wrong))
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate fact ids")
    return items
